/* e1000e guest: a minimal polling driver for the Intel 82574L (8086:10d3), run under
 * hospes-vmm (its e1000e on passt) and under QEMU (-device e1000e), printing each step on
 * COM1 so the two can be compared line by line.
 *
 * Flow: find the function on bus 0, turn on memory decoding and bus mastering, take BAR0
 * (below 4 GiB, as the firmware or the helper assigned it); reset the card (CTRL.RST);
 * read the 64 EEPROM words through EERD, print the MAC (words 0-2) and the checksum
 * (the sum of all words, 0xbaba when valid); read the PHY id through MDIC (address 1,
 * registers 2 and 3, revision masked); set up eight legacy receive descriptors with
 * 2 KiB buffers (RCTL: EN, BAM, SECRC) and eight transmit descriptors (TCTL.EN); set
 * CTRL.SLU and wait for STATUS.LU; broadcast a DHCPDISCOVER through one legacy transmit
 * descriptor (EOP, IFCS, RS) and wait for its DD; print whether ICR says TXDW; then take
 * received frames until a UDP one to port 68 arrives and print
 * "dhcp offer A.B.C.D router E.F.G.H", whether ICR says RXT0, the good-packets counters
 * and "done", and power off. Nothing uses interrupts: the rings are polled in memory.
 * Any step that fails prints "FAILED: <what>" and halts. */
#include "pvh_note.S"

#define RXD	0x400000	/* 8 receive descriptors */
#define TXD	0x401000	/* 8 transmit descriptors */
#define RXBUF	0x410000	/* 8 receive buffers of 2 KiB */
#define TXBUF	0x420000
#define NDESC	8
#define SPINS	0x200000	/* register polls before a step fails */

#define CTRL	0x0000
#define STATUS	0x0008
#define EERD	0x0014
#define MDIC	0x0020
#define ICR	0x00c0
#define IMC	0x00d8
#define RCTL	0x0100
#define TCTL	0x0400
#define RDBAL	0x2800
#define RDBAH	0x2804
#define RDLEN	0x2808
#define RDH	0x2810
#define RDT	0x2818
#define TDBAL	0x3800
#define TDBAH	0x3804
#define TDLEN	0x3808
#define TDH	0x3810
#define TDT	0x3818
#define GPRC	0x4074
#define GPTC	0x4080

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	/* Find 8086:10d3 on bus 0. */
	xor %ecx, %ecx
1:	mov %ecx, %eax
	shl $11, %eax
	or $0x80000000, %eax
	mov %eax, %edi
	call cfg_read
	cmp $0x10d38086, %eax
	je 2f
	inc %ecx
	cmp $32, %ecx
	jb 1b
	mov $f_find, %esi
	jmp fail
2:	mov $s_found, %esi
	call puts
	lea 0x04(%edi), %eax		/* command: memory space, bus master */
	call cfg_read
	or $0x6, %eax
	mov %eax, %edx
	lea 0x04(%edi), %eax
	call cfg_write
	lea 0x10(%edi), %eax		/* BAR0 */
	call cfg_read
	test $1, %eax
	jnz 3f
	and $0xfffffff0, %eax
	mov %eax, %ebx
	test %ebx, %ebx
	jnz 4f
3:	mov $f_bar, %esi
	jmp fail

4:	/* Reset, masking every cause. */
	movl $0xffffffff, IMC(%ebx)
	movl $(1 << 26), CTRL(%ebx)
	mov $SPINS, %ecx
5:	testl $(1 << 26), CTRL(%ebx)
	jz 6f
	loop 5b
	mov $f_reset, %esi
	jmp fail
6:	movl $0xffffffff, IMC(%ebx)
	mov ICR(%ebx), %eax

	/* The EEPROM: MAC and checksum. */
	xor %ecx, %ecx
	xor %ebp, %ebp			/* the sum */
7:	call eeprom_read		/* word %ecx -> %ax */
	add %eax, %ebp
	cmp $3, %ecx
	jae 8f
	movw %ax, mac(,%ecx,2)
8:	inc %ecx
	cmp $64, %ecx
	jb 7b
	mov $s_mac, %esi
	call puts
	xor %ecx, %ecx
9:	movzbl mac(%ecx), %eax
	call puthex8
	inc %ecx
	cmp $6, %ecx
	je 10f
	mov $':', %al
	call putc
	jmp 9b
10:	mov $s_sum, %esi
	call puts
	mov %ebp, %eax
	call puthex16
	mov $'\n', %al
	call putc

	/* The PHY's id. */
	mov $2, %eax
	call phy_read
	mov %eax, %ebp
	shl $16, %ebp
	mov $3, %eax
	call phy_read
	or %eax, %ebp
	and $0xfffffff0, %ebp
	mov $s_phy, %esi
	call puts
	mov %ebp, %eax
	call puthex32
	mov $'\n', %al
	call putc

	/* Receive ring: all eight descriptors with buffers, seven handed to the card. */
	xor %ecx, %ecx
11:	mov %ecx, %eax
	shl $4, %eax
	mov %ecx, %edx
	shl $11, %edx
	add $RXBUF, %edx
	movl %edx, RXD(%eax)
	movl $0, RXD+4(%eax)
	movl $0, RXD+8(%eax)
	movl $0, RXD+12(%eax)
	inc %ecx
	cmp $NDESC, %ecx
	jb 11b
	movl $RXD, RDBAL(%ebx)
	movl $0, RDBAH(%ebx)
	movl $(NDESC * 16), RDLEN(%ebx)
	movl $0, RDH(%ebx)
	movl $(NDESC - 1), RDT(%ebx)
	movl $((1 << 1) | (1 << 15) | (1 << 26)), RCTL(%ebx)	/* EN, BAM, SECRC */
	/* Transmit ring. */
	movl $TXD, TDBAL(%ebx)
	movl $0, TDBAH(%ebx)
	movl $(NDESC * 16), TDLEN(%ebx)
	movl $0, TDH(%ebx)
	movl $0, TDT(%ebx)
	movl $((1 << 1) | (1 << 3)), TCTL(%ebx)	/* EN, PSP */

	/* Link up. */
	mov CTRL(%ebx), %eax
	or $(1 << 6), %eax
	mov %eax, CTRL(%ebx)
	mov $SPINS, %ecx
12:	testl $2, STATUS(%ebx)
	jnz 13f
	loop 12b
	mov $f_link, %esi
	jmp fail
13:	mov $s_link, %esi
	call puts
	mov ICR(%ebx), %eax		/* forget the link change */

	/* DHCPDISCOVER from our MAC. */
	mov $mac, %edi
	call dhcp_discover		/* %esi = frame, %ecx = length */
	mov %ecx, TXD+8			/* length; CSO 0 */
	mov $TXBUF, %edi
	rep movsb
	movl $TXBUF, TXD
	movl $0, TXD+4
	movb $0x0b, TXD+11		/* CMD: EOP, IFCS, RS */
	movl $0, TXD+12
	movl $1, TDT(%ebx)
14:	testb $1, TXD+12		/* DD */
	jz 14b
	mov $s_sent, %esi
	call puts
	mov TDH(%ebx), %eax
	call putdec
	mov $s_txdw, %esi
	call puts
	mov ICR(%ebx), %eax
	mov %eax, icr_seen
	and $1, %eax
	call putdec
	mov $'\n', %al
	call putc

	/* Receive until the offer: a UDP frame to port 68. */
15:	movzbl rx_next, %ecx
	mov %ecx, %edi
	shl $4, %edi
	add $RXD, %edi
16:	testb $1, 12(%edi)		/* DD */
	jz 16b
	mov %ecx, %esi
	shl $11, %esi
	add $RXBUF, %esi
	cmpw $0x0008, 12(%esi)		/* IPv4 */
	jne 17f
	cmpb $17, 23(%esi)		/* UDP */
	jne 17f
	cmpw $0x4400, 36(%esi)		/* destination port 68 */
	je 18f
17:	call rx_return
	jmp 15b
18:	movzwl 8(%edi), %ecx		/* the offer's length */
	call dhcp_offer
	mov $s_status, %esi
	call puts
	movzbl 12(%edi), %eax
	and $3, %eax			/* DD, EOP */
	call puthex8
	mov $s_rxt0, %esi
	call puts
	mov ICR(%ebx), %eax
	or icr_seen, %eax		/* RXT0 may have come before the TXDW read */
	shr $7, %eax
	and $1, %eax
	call putdec
	mov $s_gprc, %esi
	call puts
	mov GPRC(%ebx), %eax
	test %eax, %eax
	setnz %al
	movzbl %al, %eax
	call putdec
	mov $s_gptc, %esi
	call puts
	mov GPTC(%ebx), %eax
	call putdec
	mov $'\n', %al
	call putc
	mov $s_done, %esi
	call puts
	jmp acpi_poweroff

/* rx_return: hands descriptor rx_next back (status cleared, RDT moved to it). */
rx_return:
	push %eax
	push %ecx
	movzbl rx_next, %ecx
	mov %ecx, %eax
	shl $4, %eax
	movl $0, RXD+8(%eax)
	movl $0, RXD+12(%eax)
	mov %ecx, RDT(%ebx)
	inc %ecx
	and $(NDESC - 1), %ecx
	movb %cl, rx_next
	pop %ecx
	pop %eax
	ret

/* eeprom_read: EEPROM word %ecx -> %eax (zero-extended), through EERD. */
eeprom_read:
	push %edx
	mov %ecx, %eax
	shl $2, %eax
	or $1, %eax			/* START */
	mov %eax, EERD(%ebx)
	mov $SPINS, %edx
1:	mov EERD(%ebx), %eax
	test $2, %eax			/* DONE */
	jnz 2f
	dec %edx
	jnz 1b
	mov $f_eeprom, %esi
	jmp fail
2:	shr $16, %eax
	pop %edx
	ret

/* phy_read: PHY register %eax at address 1 -> %eax, through MDIC. */
phy_read:
	push %edx
	shl $16, %eax
	or $((1 << 21) | (2 << 26)), %eax	/* PHY 1, read */
	mov %eax, MDIC(%ebx)
	mov $SPINS, %edx
1:	mov MDIC(%ebx), %eax
	test $(1 << 28), %eax		/* READY */
	jnz 2f
	dec %edx
	jnz 1b
	mov $f_mdic, %esi
	jmp fail
2:	test $(1 << 30), %eax		/* ERROR */
	jz 3f
	mov $f_mdic, %esi
	jmp fail
3:	and $0xffff, %eax
	pop %edx
	ret

/* cfg_read / cfg_write: configuration dword at address %eax (0x80000000 | ...); the
 * value in %eax / %edx. */
cfg_read:
	push %edx
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	pop %edx
	ret
cfg_write:
	push %edx
	push %edx
	mov $0xcf8, %dx
	out %eax, %dx
	pop %eax
	mov $0xcfc, %dx
	out %eax, %dx
	pop %edx
	ret

/* fail: prints "FAILED: " and the string at %esi, then halts. */
fail:
	push %esi
	mov $s_failed, %esi
	call puts
	pop %esi
	call puts
1:	cli
	hlt
	jmp 1b

#include "dhcp.S"
#include "hex.S"
#include "lib.S"

	.data
	.align 4

mac:		.space 8
icr_seen:	.long 0
rx_next:	.byte 0

	.section .rodata
s_found:	.asciz "found 8086:10d3\n"
s_mac:		.asciz "mac "
s_sum:		.asciz "\neeprom sum "
s_phy:		.asciz "phy id "
s_link:		.asciz "link up\n"
s_sent:		.asciz "sent, tdh "
s_txdw:		.asciz " txdw "
s_status:	.asciz "rx status "
s_rxt0:		.asciz " rxt0 "
s_gprc:		.asciz " gprc>0 "
s_gptc:		.asciz " gptc "
s_done:		.asciz "done\n"
s_failed:	.asciz "FAILED: "
f_find:		.asciz "no 8086:10d3 on bus 0\n"
f_bar:		.asciz "BAR0 is not a memory BAR\n"
f_reset:	.asciz "CTRL.RST stays set\n"
f_eeprom:	.asciz "EERD never DONE\n"
f_mdic:		.asciz "MDIC read failed\n"
f_link:		.asciz "no link\n"

	.bss
	.align 16
	.space 4096
stack_top:
