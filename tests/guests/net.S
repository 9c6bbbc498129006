/* virtio-net guest: a minimal polling driver for the modern virtio-pci network card, talking
 * to a real passt behind the helper.
 *
 * It finds 1af4:1041 on bus 0, negotiates VERSION_1 + MAC, sets up the receive (0) and
 * transmit (1) queues with eight entries each, reads the MAC from the device configuration,
 * broadcasts a DHCPDISCOVER and prints passt's answer: "dhcp offer A.B.C.D router E.F.G.H".
 * Then, by default, it prints "ready" and echoes every UDP datagram back to its sender
 * (swapping addresses and ports leaves both checksums valid), printing "echo N" with the
 * payload length, until a datagram starting with "bye" arrives; then it powers off.
 * With -DBENCH_PORT=P -DBENCH_SIZE=S -DBENCH_COUNT=N it instead sends N UDP datagrams of S
 * payload bytes to the router's port P (passt maps the router to the host's loopback),
 * keeping all eight transmit entries in flight, prints "bench sent N" and powers off.
 * With -DDHCP_ROUNDS it instead runs DHCP exchanges forever, for the save and resume
 * test: "round N", a DHCPDISCOVER (sent again when no offer comes within about 2^33 TSC
 * ticks, as when the exchange was cut by a save), the offer, a pause of up to 2^32 ticks.
 *
 * The transport's layout in BAR0 is fixed (common config 0x0, device config 0x2000, notify
 * 0x3000 + 4 * queue), so this driver does not walk the capability list. No interrupts:
 * it polls the used rings, which costs no exits. */
#include "pvh_note.S"

#define RXD	0x400000	/* receive queue: descriptors, avail ring, used ring */
#define RXA	0x400100
#define RXU	0x400200
#define TXD	0x401000	/* transmit queue */
#define TXA	0x401100
#define TXU	0x401200
#define RXBUF	0x410000	/* 8 receive buffers of 2 KiB */
#define TXBUF	0x420000	/* 12-byte virtio-net header, then the frame */
#define QSIZE	8
#define BUFLEN	0x800
#define HDR	12

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov $0x10411af4, %edi
	call find_virtio
	test %ebx, %ebx
	jnz 1f
	mov $s_nonet, %esi
	call puts
	jmp acpi_poweroff
1:	/* Handshake: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. */
	movb $0, 0x14(%ebx)
	movb $1, 0x14(%ebx)
	movb $3, 0x14(%ebx)
	movl $0, 0x08(%ebx)
	movl $(1 << 5), 0x0c(%ebx)	/* VIRTIO_NET_F_MAC */
	movl $1, 0x08(%ebx)
	movl $1, 0x0c(%ebx)		/* VIRTIO_F_VERSION_1 */
	movb $0xb, 0x14(%ebx)
	movb 0x14(%ebx), %al
	test $8, %al
	jnz 2f
	mov $s_feat, %esi
	call puts
	jmp acpi_poweroff
2:	xor %eax, %eax
	mov $RXD, %ecx
	call setup_queue
	mov $1, %eax
	mov $TXD, %ecx
	call setup_queue
	movb $0xf, 0x14(%ebx)		/* DRIVER_OK */

	/* The MAC from the device configuration. */
	mov 0x2000(%ebx), %eax
	mov %eax, mac
	movw 0x2004(%ebx), %ax
	movw %ax, mac+4

	/* Hand all receive buffers to the device. */
	xor %ecx, %ecx
3:	mov %ecx, %eax
	shl $4, %eax
	mov %ecx, %edx
	shl $11, %edx
	add $RXBUF, %edx
	movl %edx, RXD(%eax)
	movl $0, RXD+4(%eax)
	movl $BUFLEN, RXD+8(%eax)
	movw $2, RXD+12(%eax)		/* VIRTQ_DESC_F_WRITE */
	movw %cx, RXA+4(,%ecx,2)
	inc %ecx
	cmp $QSIZE, %ecx
	jb 3b
	movw $QSIZE, RXA+2
	movw %cx, rx_avail
	movw $0, 0x3000(%ebx)		/* notify queue 0 */

	/* DHCPDISCOVER from our MAC. */
	mov $mac, %edi
	call dhcp_discover
	call send_frame

	/* Wait for the offer: a UDP frame to port 68. */
4:	call recv_frame			/* %esi = frame, %ecx = length, %edi = entry id */
	call is_dhcp_reply
	je 6f
5:	call repost
	jmp 4b
6:	mov 6(%esi), %eax		/* passt's MAC, for what we send later */
	mov %eax, peer_mac
	movw 10(%esi), %ax
	movw %ax, peer_mac+4
	call dhcp_offer
	call repost

#ifdef BENCH_PORT
	jmp bench
#endif
#ifdef DHCP_ROUNDS
	jmp rounds
#endif

	mov $s_ready, %esi
	call puts
	/* Echo UDP datagrams. */
11:	call recv_frame
	cmpw $0x0008, 12(%esi)
	jne 12f
	cmpb $17, 23(%esi)
	jne 12f
	cmpw $0x4400, 36(%esi)		/* late DHCP traffic is not for echoing */
	je 12f
	push %esi
	push %ecx
	mov $TXBUF+HDR, %edi
	rep movsb			/* copy the frame */
	pop %ecx
	pop %esi
	mov $TXBUF+HDR, %edi
	mov 6(%esi), %eax		/* Ethernet: back to the sender, from us */
	mov %eax, (%edi)
	movw 10(%esi), %ax
	movw %ax, 4(%edi)
	mov mac, %eax
	mov %eax, 6(%edi)
	movw mac+4, %ax
	movw %ax, 10(%edi)
	mov 26(%esi), %eax		/* IPv4 source <-> destination */
	mov 30(%esi), %edx
	mov %edx, 26(%edi)
	mov %eax, 30(%edi)
	movw 34(%esi), %ax		/* UDP ports */
	movw 36(%esi), %dx
	movw %dx, 34(%edi)
	movw %ax, 36(%edi)
	push %esi
	mov %edi, %esi
	call send_frame
	pop %esi
	mov $s_echo, %esi
	call puts
	movzwl TXBUF+HDR+38, %eax	/* UDP length, big-endian */
	xchg %al, %ah
	sub $8, %eax
	call putdec
	mov $'\n', %al
	call putc
	/* "bye" ends the run. */
	mov TXBUF+HDR+42, %eax
	and $0xffffff, %eax
	cmp $0x657962, %eax
	jne 12f
	call repost
	mov $s_bye, %esi
	call puts
	jmp acpi_poweroff
12:	call repost
	jmp 11b

#ifdef BENCH_PORT
/* A UDP datagram of BENCH_SIZE bytes to router:BENCH_PORT, BENCH_COUNT times, with
 * every transmit descriptor pointing at the same frame. */
bench:
	mov $TXBUF+HDR, %edi
	mov peer_mac, %eax
	mov %eax, (%edi)
	movw peer_mac+4, %ax
	movw %ax, 4(%edi)
	mov mac, %eax
	mov %eax, 6(%edi)
	movw mac+4, %ax
	movw %ax, 10(%edi)
	movw $0x0008, 12(%edi)
	movl $0x00000045, 14(%edi)	/* version 4, IHL 5; length below */
	mov $(BENCH_SIZE + 28), %eax
	xchg %al, %ah
	movw %ax, 16(%edi)
	movl $0x00000000, 18(%edi)	/* id 0, flags 0 */
	movl $0x00001140, 22(%edi)	/* TTL 64, UDP, checksum 0 for now */
	mov offer_ip, %eax
	mov %eax, 26(%edi)
	mov offer_router, %eax
	mov %eax, 30(%edi)
	movw $0x1027, 34(%edi)		/* source port 10000 */
	mov $BENCH_PORT, %eax
	xchg %al, %ah
	movw %ax, 36(%edi)
	mov $(BENCH_SIZE + 8), %eax
	xchg %al, %ah
	movw %ax, 38(%edi)
	movw $0, 40(%edi)		/* no UDP checksum */
	lea 14(%edi), %esi
	call ip_checksum
	/* Eight descriptors, one frame. */
	xor %ecx, %ecx
13:	mov %ecx, %eax
	shl $4, %eax
	movl $TXBUF, TXD(%eax)
	movl $0, TXD+4(%eax)
	movl $(HDR + 42 + BENCH_SIZE), TXD+8(%eax)
	movw $0, TXD+12(%eax)
	inc %ecx
	cmp $QSIZE, %ecx
	jb 13b
	xor %edi, %edi			/* datagrams published */
	xor %ecx, %ecx			/* published in this batch */
	/* Batches of QSIZE: publish, kick once, wait until the device used them all. */
14:	cmp $BENCH_COUNT, %edi
	jae 16f
	cmp $QSIZE, %ecx
	jae 15f
	mov tx_avail, %eax
	mov %eax, %edx
	and $(QSIZE - 1), %edx
	movw %dx, TXA+4(,%edx,2)
	inc %eax
	mov %eax, tx_avail
	movw %ax, TXA+2
	inc %edi
	inc %ecx
	jmp 14b
15:	movw $1, 0x3004(%ebx)		/* notify queue 1 */
18:	movzwl TXU+2, %eax
	cmpw tx_avail, %ax
	jne 18b
	xor %ecx, %ecx
	jmp 14b
16:	movw $1, 0x3004(%ebx)
17:	movzwl TXU+2, %eax
	cmpw tx_avail, %ax
	jne 17b
	mov $s_bench, %esi
	call puts
	mov $BENCH_COUNT, %eax
	call putdec
	mov $'\n', %al
	call putc
	jmp acpi_poweroff
#endif

#ifdef DHCP_ROUNDS
/* DHCP exchanges, numbered, for as long as the guest runs; the TSC's high word times
 * the retries and the pauses. */
rounds:
	incl round
	mov $s_round, %esi
	call puts
	mov round, %eax
	call putdec
	mov $'\n', %al
	call putc
21:	mov $mac, %edi
	call dhcp_discover
	call send_frame
	rdtsc
	mov %edx, tsc_start
22:	movzwl RXU+2, %eax		/* a frame? */
	cmpw rx_seen, %ax
	jne 23f
	rdtsc
	sub tsc_start, %edx
	cmp $2, %edx
	jb 22b
	jmp 21b				/* no offer: discover again */
23:	call recv_frame
	call is_dhcp_reply
	jne 24f
	call dhcp_offer
	call repost
	rdtsc
	mov %edx, tsc_start
25:	rdtsc
	sub tsc_start, %edx
	cmp $1, %edx
	jb 25b
	jmp rounds
24:	call repost
	jmp 22b
#endif

/* is_dhcp_reply: ZF set when the frame at %esi is IPv4 UDP to port 68. */
is_dhcp_reply:
	cmpw $0x0008, 12(%esi)		/* IPv4 */
	jne 1f
	cmpb $17, 23(%esi)		/* UDP */
	jne 1f
	cmpw $0x4400, 36(%esi)		/* destination port 68 */
1:	ret

/* send_frame: sends the %ecx-byte frame at %esi (copied behind a zero header unless it
 * is already at TXBUF+HDR) through transmit entry 0, and waits until the device used it. */
send_frame:
	push %edi
	push %ecx
	push %esi
	mov $TXBUF+HDR, %edi
	cmp %edi, %esi
	je 1f
	rep movsb
1:	pop %esi
	pop %ecx
	movl $0, TXBUF
	movl $0, TXBUF+4
	movl $0, TXBUF+8
	movl $TXBUF, TXD
	movl $0, TXD+4
	lea HDR(%ecx), %eax
	movl %eax, TXD+8
	movw $0, TXD+12
	mov tx_avail, %eax
	mov %eax, %edx
	and $(QSIZE - 1), %edx
	movw $0, TXA+4(,%edx,2)
	inc %eax
	mov %eax, tx_avail
	movw %ax, TXA+2
	movw $1, 0x3004(%ebx)		/* notify queue 1 */
2:	movzwl TXU+2, %edx
	cmpw %ax, %dx
	jne 2b
	pop %edi
	ret

/* recv_frame: waits for the next used receive entry; %esi = its frame (past the header),
 * %ecx = frame length, %edi = descriptor id. */
recv_frame:
1:	movzwl RXU+2, %eax
	cmpw rx_seen, %ax
	je 1b
	movzwl rx_seen, %eax
	and $(QSIZE - 1), %eax
	mov RXU+4(,%eax,8), %edi
	mov RXU+8(,%eax,8), %ecx
	sub $HDR, %ecx
	incw rx_seen
	mov %edi, rx_id
	mov %edi, %esi
	shl $11, %esi
	add $(RXBUF + HDR), %esi
	ret

/* repost: gives the receive buffer recv_frame returned back to the device. */
repost:
	push %eax
	push %edx
	push %ecx
	movzwl rx_avail, %eax
	mov %eax, %edx
	and $(QSIZE - 1), %edx
	movw rx_id, %cx
	movw %cx, RXA+4(,%edx,2)
	inc %eax
	movw %ax, rx_avail
	movw %ax, RXA+2
	movw $0, 0x3000(%ebx)		/* notify queue 0 */
	pop %ecx
	pop %edx
	pop %eax
	ret

#include "dhcp.S"
#include "virtio.S"
#include "lib.S"

	.data
	.align 4

mac:		.space 8
peer_mac:	.space 8
tx_avail:	.long 0
rx_avail:	.word 0
rx_seen:	.word 0
rx_id:		.long 0
round:		.long 0
tsc_start:	.long 0

	.section .rodata
s_nonet:	.asciz "no virtio-net card\n"
s_feat:		.asciz "features refused\n"
s_ready:	.asciz "ready\n"
s_echo:		.asciz "echo "
s_bye:		.asciz "bye\n"
s_bench:	.asciz "bench sent "
s_round:	.asciz "round "

	.bss
	.align 16
	.space 4096
stack_top:
