/* Shared DHCP pieces of the network test guests (net.S, e1000e.S): the DHCPDISCOVER
 * frame, the IPv4 header checksum, and reading and printing an offer as
 * "dhcp offer A.B.C.D router E.F.G.H". Needs lib.S's puts/putc/putdec. */
	.code32
	.text

/* dhcp_discover: puts our MAC (the 6 bytes at %edi) into the DHCPDISCOVER as its source
 * and chaddr, fills its IP checksum; returns %esi = the frame, %ecx = its length. */
dhcp_discover:
	push %eax
	mov $dhcp_frame, %esi
	mov (%edi), %eax
	mov %eax, 6(%esi)
	mov %eax, 70(%esi)
	movw 4(%edi), %ax
	movw %ax, 10(%esi)
	movw %ax, 74(%esi)
	lea 14(%esi), %esi
	call ip_checksum
	mov $dhcp_frame, %esi
	mov $dhcp_end - dhcp_frame, %ecx
	pop %eax
	ret

/* dhcp_offer: reads the DHCP answer frame at %esi (%ecx bytes): yiaddr into offer_ip,
 * option 3 into offer_router; prints "dhcp offer A.B.C.D router E.F.G.H\n". */
dhcp_offer:
	push %eax
	push %edx
	push %ebp
	push %esi
	mov 58(%esi), %eax		/* yiaddr */
	mov %eax, offer_ip
	lea 282(%esi), %edx		/* options after the magic cookie: find 3 */
	lea (%esi,%ecx), %ebp
1:	cmp %ebp, %edx
	jae 4f
	movzbl (%edx), %eax
	cmp $255, %eax
	je 4f
	test %eax, %eax
	jnz 2f
	inc %edx
	jmp 1b
2:	cmp $3, %eax
	jne 3f
	mov 2(%edx), %eax
	mov %eax, offer_router
3:	movzbl 1(%edx), %eax
	lea 2(%edx,%eax), %edx
	jmp 1b
4:	mov $s_dhcp_offer, %esi
	call puts
	mov $offer_ip, %esi
	call put_ip
	mov $s_dhcp_router, %esi
	call puts
	mov $offer_router, %esi
	call put_ip
	mov $'\n', %al
	call putc
	pop %esi
	pop %ebp
	pop %edx
	pop %eax
	ret

/* ip_checksum: fills the checksum of the 20-byte IPv4 header at %esi. */
ip_checksum:
	push %ecx
	push %edx
	push %eax
	movw $0, 10(%esi)
	xor %edx, %edx
	xor %ecx, %ecx
1:	movzwl (%esi,%ecx,2), %eax
	xchg %al, %ah
	add %eax, %edx
	inc %ecx
	cmp $10, %ecx
	jb 1b
	mov %edx, %eax
	shr $16, %eax
	and $0xffff, %edx
	add %eax, %edx
	mov %edx, %eax
	shr $16, %eax
	add %eax, %edx
	not %edx
	xchg %dl, %dh
	movw %dx, 10(%esi)
	pop %eax
	pop %edx
	pop %ecx
	ret

/* put_ip: prints the IPv4 address at %esi as A.B.C.D. */
put_ip:
	push %esi
	push %ecx
	push %eax
	mov $4, %ecx
1:	movzbl (%esi), %eax
	call putdec
	inc %esi
	dec %ecx
	jz 2f
	mov $'.', %al
	call putc
	jmp 1b
2:	pop %eax
	pop %ecx
	pop %esi
	ret

	.data
	.align 4
/* DHCPDISCOVER: Ethernet, IPv4 (checksum filled in), UDP 68 -> 67 (no checksum), BOOTP. */
dhcp_frame:
	.byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff	/* to everyone */
	.byte 0, 0, 0, 0, 0, 0			/* from us (filled in) */
	.byte 0x08, 0x00
	.byte 0x45, 0x00, 0x01, 0x48		/* IPv4, 328 bytes */
	.byte 0x00, 0x00, 0x00, 0x00
	.byte 0x40, 0x11, 0x00, 0x00		/* TTL 64, UDP */
	.byte 0, 0, 0, 0
	.byte 255, 255, 255, 255
	.byte 0x00, 0x44, 0x00, 0x43		/* 68 -> 67 */
	.byte 0x01, 0x34, 0x00, 0x00		/* 308 bytes */
	.byte 1, 1, 6, 0			/* BOOTREQUEST, Ethernet */
	.byte 0x48, 0x6f, 0x73, 0x70		/* xid */
	.byte 0, 0, 0x80, 0			/* broadcast reply */
	.space 16				/* ciaddr yiaddr siaddr giaddr */
	.space 16				/* chaddr (filled in) */
	.space 192				/* sname, file */
	.byte 99, 130, 83, 99			/* magic cookie */
	.byte 53, 1, 1				/* DHCPDISCOVER */
	.byte 255
	.space 56				/* pad BOOTP to 300 bytes */
dhcp_end:
offer_ip:	.long 0
offer_router:	.long 0

	.section .rodata
s_dhcp_offer:	.asciz "dhcp offer "
s_dhcp_router:	.asciz " router "
	.text
